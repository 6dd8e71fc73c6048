"""Packages of the wheel: `akvq*`, plus the configs the library reads (configs/quant, configs/layer_patterns)
shipped as `akvq/_configs`, and the C kernel's source. Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["akvq*", "hydra_plugins*"]), "akvq._configs"],
    package_dir={"akvq._configs": "configs"},
    package_data={
        "akvq._configs": ["quant/*.yaml", "layer_patterns/*.yaml"],
        "akvq.attention": ["csrc/*.c"],
        "akvq.quant": ["csrc/*.c"],
        "akvq.tasks": ["lmms_tasks/*", "lmms_tasks/_*"],
    },
)
