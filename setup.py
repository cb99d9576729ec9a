"""Build hooks only; the metadata lives in setup.cfg.

pruning-bench extends the `clip_benchmark` command through a start-up `.pth` file, which must sit
at the top of site-packages (not inside the package). setuptools has no declarative way to ship
one, so `build_py` writes it: into `build_lib` for wheels and regular installs, and straight into
the editable wheel for `pip install -e` (whose lenient modes ignore `build_lib`).
"""
import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_NAME = "pruning_bench_clip_benchmark.pth"
# One line, as site.py executes `import` lines of .pth files; errors must never reach start-up.
PTH_LINE = (
    "import sys; exec('try:\\n from pruning_bench.clip_benchmark_ext.hook import install\\n install()\\n"
    "except Exception:\\n pass')\n"
)


class build_py_with_pth(build_py):
    """build_py that also emits the start-up `.pth` file next to the package."""

    def run(self):
        super().run()
        target = self.build_lib
        if getattr(self, "editable_mode", False):
            # In a PEP 660 build, `install_lib` is the root of the editable wheel being assembled.
            target = self.get_finalized_command("install").install_lib
        os.makedirs(target, exist_ok=True)
        path = os.path.join(target, PTH_NAME)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(PTH_LINE)
        self._pth_outputs = [path]

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + list(getattr(self, "_pth_outputs", []))


setup(cmdclass={"build_py": build_py_with_pth})
