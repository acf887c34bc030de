"""Installs the two packages of the project: ``lift`` (learned local features) and
``correspondence`` (matching, robust estimation, learned filtering, dense alignment)."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="lift-features",
    version="0.1.0",
    description="LIFT learned local features and correspondence tools: a drop-in for "
    "cv2.SIFT_create() + cv2.findHomography() in PyTorch",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["lift", "lift.*", "correspondence", "correspondence.*"]),
    package_data={
        "lift": ["weights/*.pt", "weights/*.json", "weights/*.md", "assets/*"],
        "correspondence": ["weights/*.pt", "weights/*.md"],
    },
    include_package_data=True,
    install_requires=[
        "torch>=2.1",
        "numpy>=1.23",
        "scipy>=1.9",
        "opencv-contrib-python>=4.7",
        "h5py>=3.7",
        "scikit-learn>=1.1",
        "matplotlib>=3.5",
        "tqdm>=4.60",
    ],
    extras_require={
        "test": [
            "pytest>=7",
            "scikit-image>=0.20",
            "nbmake>=1.4",
            "nbclient>=0.7",
            "nbformat>=5.7",
            "ipykernel>=6",
        ],
        "sfm": ["pycolmap>=3.12"],
    },
    entry_points={
        "console_scripts": [
            "lift-extract=lift.cli.extract:main",
            "lift-match=lift.cli.match:main",
            "lift-bench=lift.bench.cli:main",
            "lift-build-patches=lift.data.build:main",
            "lift-train=lift.training.cli:main",
            "lift-sfm=lift.cli.sfm:main",
            "lift-train-cne=correspondence.training.cne:main",
            "lift-train-flow=correspondence.training.flow:main",
            "lift-align=correspondence.cli.align:main",
        ]
    },
)
