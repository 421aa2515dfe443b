"""sglang_fair: SGLang with a FairBatching scheduler."""

from setuptools import find_packages, setup

setup(
    name="sglang_fair",
    version="0.1.0",
    description="SGLang fork whose scheduler forms batches with FairBatching",
    package_dir={"": "python"},
    packages=find_packages("python"),
    package_data={"sglang_fair.policy": ["presets/*.json"]},
    python_requires=">=3.10",
    install_requires=["numpy"],
)
