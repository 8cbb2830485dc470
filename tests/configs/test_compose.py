"""Every shipped experiment and group option composes and validates against the schema."""
import pytest

from trainer.config import CONFIG_DIR, compose_config, group_options
from trainer.errors import UserError

EXPERIMENTS = group_options("experiment")


def test_experiments_are_shipped():
    assert {"gpt_tiny_cpu", "gpt2_124m", "gpt_1b", "classifier_tabular"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment):
    cfg = compose_config([f"experiment={experiment}"])
    assert cfg.run.name == experiment
    assert cfg.model._target_ and cfg.data._target_


@pytest.mark.parametrize("strategy", group_options("strategy"))
def test_every_strategy_option_composes(strategy):
    devices = "1" if strategy == "single" else "2"
    cfg = compose_config([f"strategy={strategy}", f"trainer.devices={devices}"])
    assert cfg.strategy.name in ("single", "ddp", "fsdp", "fsdp2", "deepspeed")


def test_default_is_the_tiny_cpu_gpt():
    cfg = compose_config([])
    assert cfg.run.name == "gpt_tiny_cpu"
    assert cfg.model._target_ == "trainer.models.gpt.GPT"
    assert cfg.data.path == "stdlib" and cfg.data.tokenizer == "byte"
    assert cfg.data.seq_len == cfg.model.seq_len


def test_gpt_1b_is_about_a_billion_parameters():
    from trainer.models.gpt import GPT, GPTConfig

    cfg = compose_config(["experiment=gpt_1b"])
    m = cfg.model
    gcfg = GPTConfig(vocab_size=32768, seq_len=m.seq_len, d_model=m.d_model, n_layers=m.n_layers,
                     n_heads=m.n_heads, mlp_hidden=m.mlp_hidden)
    # Count without allocating: parameters per block + embeddings.
    d, h = gcfg.d_model, gcfg.hidden
    n = gcfg.n_layers * (4 * d * d + 3 * d * h + 2 * d) + gcfg.vocab_size * d + d
    assert 0.9e9 < n < 1.3e9
    assert cfg.strategy.name == "deepspeed" and cfg.strategy.zero_stage == 3


def test_gpt2_124m_shape():
    cfg = compose_config(["experiment=gpt2_124m"])
    assert (cfg.model.n_layers, cfg.model.d_model, cfg.model.n_heads, cfg.model.seq_len) == (12, 768, 12, 1024)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("trainer.max_stepz=5", "max_steps"),
        ("strategy=ddpp", "ddp"),
        ("optim.lr=abc", "optim.lr"),
        ("optim.lr=-1", "optim.lr"),
        ("trainer.max_steps=-5", "trainer.max_steps"),
        ("data.batch_size=0", "data.batch_size"),
        ("model.d_model=130", "not divisible"),
        ("model.n_layerz=3", "n_layers"),
        ("kernels=fast", "kernels"),
        ("trainer.compile_mode=fastest", "trainer.compile_mode"),
        ("trainer.compile_mode=reduce-overhead", "add trainer.compile=true"),
    ],
)
def test_bad_overrides_are_user_errors(override, needle):
    with pytest.raises(UserError, match=needle):
        compose_config([override])


# Overrides whose `++` rewrites normalize_overrides must find: constructor arguments the YAML leaves out,
# next to a typo (refused later), a group choice that changes the target, trainer.extra, a W&B entry, a sweep.
NORMALIZE_CASES = [
    ["model.d_model=32", "model.n_heads=2", "data.batch_size=4", "data.val_batches=2", "trainer.max_steps=3"],
    ["experiment=classifier_tabular", "data.batch_size=8", "trainer.max_steps=3"],
    ["data=text", "data.text_field=body", "data.path=/tmp/x.txt", "model.seq_len=16"],
    ["trainer.extra.limit_val_batches=1", "logger.wandb.project=p", "model.n_layerz=3"],
    ["model.d_model=32", "model.dropout=0.1", "optim.lr=1e-3,2e-3"],
]


@pytest.mark.parametrize("overrides", NORMALIZE_CASES, ids=lambda o: o[0])
def test_normalize_overrides_finds_at_once_what_the_error_by_error_search_finds(overrides, monkeypatch):
    """The `++` rewrites come from one composition of the choosing overrides (plus one to check them), not two
    Hydra compositions per argument; the answer is the one the error-by-error search gives."""
    import hydra

    from trainer.config import compose

    calls = []
    real = hydra.compose
    monkeypatch.setattr(hydra, "compose", lambda *a, **k: calls.append(k) or real(*a, **k))
    compose._COMPOSED.clear()
    fast = compose.normalize_overrides(overrides)
    fast_compositions = len(calls)

    compose._COMPOSED.clear()
    calls.clear()
    monkeypatch.setattr(compose, "_with_predicted_plus", lambda out, config_name: out)
    assert compose.normalize_overrides(overrides) == fast
    assert fast != overrides  # every case has an argument to rewrite
    if "model.n_layerz=3" not in overrides:  # with a typo the search runs, as before, for its message
        assert fast_compositions <= 2 < len(calls), (fast_compositions, len(calls))


def test_a_composition_is_kept_and_handed_out_as_a_copy():
    import hydra

    from trainer.config import compose

    compose._COMPOSED.clear()
    first = compose.compose_unchecked(["trainer.max_steps=9"])
    first.trainer.max_steps = 1  # callers fill and change what they get
    calls = []
    real = hydra.compose
    try:
        hydra.compose = lambda *a, **k: calls.append(k) or real(*a, **k)
        again = compose.compose_unchecked(["trainer.max_steps=9"])
    finally:
        hydra.compose = real
    assert again.trainer.max_steps == 9 and not calls
