"""raylhf: InstructGPT-style RLHF as an asynchronous actor/learner system on Ray.

The components live in the repository's top-level folders (`actors/`, `learners/`, ...). An install maps
each of them under this one name (see `package-dir` in pyproject.toml), so `raylhf.actors` is the
repository's `actors/`. A plain checkout that is not installed (a Ray job's `--working-dir` upload, for
one) gets the same names from the folders beside this package.
"""

from pathlib import Path

__version__ = "0.1.0"

_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "orchestration" / "cli.py").is_file() and str(_checkout) not in __path__:
    __path__.append(str(_checkout))
