"""Builds the _strata extension with the repository's CMake and packages it with
python/strata (see pyproject.toml). The build directory is $STRATA_BUILD_DIR, else
build/release; it is configured with the release preset when it has no build files."""
import os
import re
import shutil
import subprocess
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        build = Path(os.environ.get("STRATA_BUILD_DIR", ROOT / "build" / "release"))
        if not (build / "build.ninja").exists():
            subprocess.check_call(["cmake", "--preset", "release"], cwd=ROOT)
        subprocess.check_call(["cmake", "--build", str(build), "--target", "_strata"], cwd=ROOT)
        built = next((build / "python" / "strata").glob("_strata*.so"))
        target = Path(self.get_ext_fullpath(ext.name))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, target)


def version():
    text = (ROOT / "CMakeLists.txt").read_text()
    return re.search(r"project\(strata VERSION ([0-9.]+)", text).group(1)


setup(
    version=version(),
    packages=["strata"],
    package_dir={"": "python"},
    ext_modules=[CMakeExtension("strata._strata")],
    cmdclass={"build_ext": CMakeBuild},
)
