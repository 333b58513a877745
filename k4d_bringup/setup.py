"""ament_python package k4d_bringup (also pip-installable: pip install -e k4d_bringup)."""
import os

from setuptools import find_packages, setup

package_name = "k4d_bringup"


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
for folder in ["config", "launch", "rviz"]:
    data_files += tree(folder)

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*", "benchmarks"]),
    include_package_data=True,
    package_data={package_name: ["description/**/*", "data/**/*"]},
    data_files=data_files,
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="k4d developers",
    maintainer_email="k4d-dev@example.org",
    description="Bringup for k4d: the MuJoCo YAM workcell sim, launch files, RViz config, recording, datasets and the k4d CLI.",
    license="Apache-2.0",
    entry_points={"console_scripts": [
        "k4d = k4d_bringup.cli:main",
        "sim_node = k4d_bringup.ros.sim_node:main",
        "planner_node = k4d_bringup.ros.planner_node:main",
        "demo_node = k4d_bringup.ros.demo_node:main",
        "shadow_node = k4d_bringup.ros.shadow_node:main",
        "overlay_node = k4d_bringup.ros.overlay_node:main",
    ]},
)
