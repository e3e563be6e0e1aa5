"""What every workflow script does first: logs into the rule's log file, threads and arithmetic set, and a job
that was given a GPU its torch cannot see stopped at once."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path


# the thread pools a job's numerical libraries size from the environment when they start
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def use_threads(threads: int) -> int:
    """Run on exactly `threads` threads (the rule's `threads:`), whatever the environment says: more threads than
    the cores a job was given make every small op of a decode step wait for threads that are not running (on a
    loaded 2-core machine the sampler took 14.8 s instead of 1.15 s). Sets the environment for libraries started
    later, and torch's intra- and inter-op pools (the latter only where torch has not started it yet)."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    try:
        import torch
    except ImportError:
        return threads
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # the inter-op pool is fixed once torch has used it
        logging.getLogger(__name__).debug("torch's inter-op threads were already started: %d",
                                          torch.get_num_interop_threads())
    return threads


def start_job(smk, name: str | None = None, precision: str = "fp32") -> logging.Logger:
    """Send stdout/stderr and logging to the rule's `log:` file (progress bars included), run on exactly the
    rule's threads (use_threads), set the
    job's arithmetic (`precision`, i2a.infra.precision's vocabulary: the config's where it has a setting for the job,
    else strict fp32) and record it in the log, and stop a job given a GPU that torch does not see."""
    if smk.log:
        log_path = Path(str(smk.log[0]))
        log_path.parent.mkdir(parents=True, exist_ok=True)
        stream = open(log_path, "a", buffering=1, encoding="utf-8")
        sys.stdout = sys.stderr = stream
        os.dup2(stream.fileno(), 1)
        os.dup2(stream.fileno(), 2)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # the `lightning` package gives its logger a console handler of its own at import: without this, every
    # Lightning message would be written twice (once by that handler, once by the root's)
    logging.getLogger("lightning").propagate = False
    threads = use_threads(max(1, int(getattr(smk, "threads", 1) or 1)))
    logger = logging.getLogger(name or smk.rule)
    logger.info("rule %s: %d thread(s), wildcards %s", smk.rule, threads, dict(smk.wildcards.items()))
    try:
        import torch
    except ImportError:  # a job of the data environment (CPU_ENV): no torch, no arithmetic to set
        return logger
    from i2a.infra.device import check_gpu_given
    from i2a.infra.precision import use_precision

    resources = getattr(smk, "resources", None)
    check_gpu_given(rule_gpus=getattr(resources, "gpu", 0) or 0)
    use_precision(precision, logger)
    return logger
