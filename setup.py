"""What pyproject.toml cannot say: which packages ship. configs/ stays at the top of the repository (where
Hydra users look for it) and installs as the package `trainer_configs`, each config group a subpackage of
YAML files (trainer.config.compose.config_dir finds it). configs/local/ is a user's own and never ships."""
from setuptools import find_namespace_packages, find_packages, setup

config_groups = find_namespace_packages(where="configs", exclude=["local", "local.*"])
setup(
    packages=find_packages(include=["trainer", "trainer.*", "launch", "launch.*"])
    + ["trainer_configs"] + [f"trainer_configs.{group}" for group in config_groups],
    package_dir={"trainer_configs": "configs"},
)
