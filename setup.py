"""sglang_fair: SGLang with a FairBatching scheduler.

Pinned requirements live in requirements/ (runtime.txt is install_requires; constraints.txt locks
the whole environment).  For a development set-up use ``scripts/setup.sh`` (see README.md).
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def _requirements(name: str) -> list[str]:
    lines = (HERE / "requirements" / name).read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


setup(
    name="sglang_fair",
    version="0.1.0",
    description="SGLang fork whose scheduler forms batches with FairBatching",
    package_dir={"": "python"},
    packages=find_packages("python"),
    package_data={"sglang_fair.policy": ["presets/*.json"]},
    python_requires=">=3.10",
    install_requires=_requirements("runtime.txt"),
    extras_require={"test": _requirements("test.txt"), "bench": _requirements("bench.txt")},
)
