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
