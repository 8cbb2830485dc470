"""Which W&B mode a run gets: WANDB_MODE is honoured, and a key counts only for the server W&B would use."""
from trainer.tracking.loggers import resolve_wandb_mode, wandb_has_key

KEY = "0123456789abcdef0123456789abcdef01234567"


def test_wandb_mode_wins_over_a_configured_key():
    assert resolve_wandb_mode("auto", {"WANDB_API_KEY": KEY}) == "online"
    assert resolve_wandb_mode("auto", {"WANDB_API_KEY": KEY, "WANDB_MODE": "offline"}) == "offline"
    assert resolve_wandb_mode("auto", {"WANDB_API_KEY": KEY, "WANDB_MODE": "disabled"}) == "disabled"
    assert resolve_wandb_mode("auto", {"WANDB_MODE": "dryrun"}) == "offline"
    assert resolve_wandb_mode("online", {"WANDB_MODE": "offline"}) == "online"  # the config, said explicitly


def test_a_netrc_key_counts_for_its_own_host_only(tmp_path):
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine wandb.example.org\n  login user\n  password {KEY}\n")
    netrc.chmod(0o600)
    self_hosted = {"NETRC": str(netrc), "WANDB_BASE_URL": "https://wandb.example.org"}
    assert wandb_has_key(self_hosted) and resolve_wandb_mode("auto", self_hosted) == "online"
    public = {"NETRC": str(netrc)}  # api.wandb.ai: no entry for it
    assert not wandb_has_key(public) and resolve_wandb_mode("auto", public) == "offline"
    other = {"NETRC": str(netrc), "WANDB_BASE_URL": "http://127.0.0.1:8080"}
    assert not wandb_has_key(other)


def test_later_tools_find_the_runs_wandb_settings(tmp_path, monkeypatch):
    """evaluate/export attach to the training run's W&B run through wandb_target (the frozen logger.wandb entry)."""
    from omegaconf import OmegaConf

    from trainer.tracking.loggers import wandb_target
    from trainer.tracking.run_dir import RunDir

    rd = RunDir(tmp_path)
    assert wandb_target(tmp_path) is None  # not a run dir
    OmegaConf.save(OmegaConf.create({"logger": {"wandb": {"_target_": "x", "project": "p", "entity": None, "mode": "auto",
                                                          "group": "g", "tags": ["a"]}}}), rd.config)
    rd.wandb_id.write_text("abcd1234\n")
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_target(tmp_path) == {"id": "abcd1234", "project": "p", "entity": None, "group": "g", "tags": ["a"],
                                      "mode": "offline", "dir": str(tmp_path)}
    OmegaConf.save(OmegaConf.create({"logger": {"wandb": False}}), rd.config)
    assert wandb_target(tmp_path) is None
