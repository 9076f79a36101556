"""raylhf: InstructGPT-style RLHF as an asynchronous actor/learner system on Ray."""

__version__ = "0.1.0"
