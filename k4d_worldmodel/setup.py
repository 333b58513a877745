"""ament_python package k4d_worldmodel (also pip-installable: pip install -e k4d_worldmodel)."""
import os

from setuptools import find_packages, setup

package_name = "k4d_worldmodel"


def tree(src):
    """(install_dir, [files]) pairs for every folder below src, for data_files."""
    out = []
    for root, _dirs, files in os.walk(src):
        if files:
            out.append((os.path.join("share", package_name, root), [os.path.join(root, f) for f in files]))
    return out


data_files = [
    ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
    ("share/" + package_name, ["package.xml"]),
]
for folder in ["config"]:
    data_files += tree(folder)

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "benchmarks"]),
    include_package_data=True,
    package_data={package_name: ["description/**/*", "data/**/*", "training/configs/*.yaml", "checkpoints/**/*"]},
    data_files=data_files,
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="k4d developers",
    maintainer_email="k4d-dev@example.org",
    description="Kinema4D-compatible 4D world model (diffusers/peft DiT), metric point-cloud lifting, and the GPU Imagine lifecycle node.",
    license="Apache-2.0",
    entry_points={"console_scripts": ["imagine_node = k4d_worldmodel.ros.imagine_node:main"]},
)
