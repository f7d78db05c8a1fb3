"""Packaging for aurora_nb. All metadata lives in settings.ini; edit it there, not here."""
import shlex
from configparser import ConfigParser

import setuptools

config = ConfigParser(delimiters=["="])
config.read("settings.ini", encoding="utf-8")
cfg = config["DEFAULT"]
for key in "lib_name lib_path version description keywords author author_email license status min_python git_url".split():
    assert key in cfg, f"settings.ini is missing the required key {key!r}"

licenses = {"apache2": "Apache-2.0", "mit": "MIT", "bsd3": "BSD-3-Clause"}  # SPDX ids
statuses = ["1 - Planning", "2 - Pre-Alpha", "3 - Alpha", "4 - Beta", "5 - Production/Stable", "6 - Mature", "7 - Inactive"]

setuptools.setup(
    name=cfg["lib_name"], version=cfg["version"], description=cfg["description"], keywords=cfg["keywords"],
    author=cfg["author"], author_email=cfg["author_email"],
    license=licenses.get(cfg["license"].lower(), cfg["license"]),
    classifiers=[f"Development Status :: {statuses[int(cfg['status']) - 1]}", "Programming Language :: Python :: 3"],
    url=cfg["git_url"],
    packages=setuptools.find_packages(include=[cfg["lib_path"], cfg["lib_path"] + ".*"]),
    include_package_data=True,
    install_requires=shlex.split(cfg.get("requirements", "")),
    extras_require={k.removesuffix("_requirements"): shlex.split(v) for k, v in cfg.items()
                    if k.endswith("_requirements")},  # dev_requirements -> [dev], deepspeed_requirements -> [deepspeed]
    python_requires=">=" + cfg["min_python"],
    long_description=open("README.md", encoding="utf-8").read(), long_description_content_type="text/markdown",
    zip_safe=False,
    entry_points={"console_scripts": cfg.get("console_scripts", "").split(),
                  "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
)
