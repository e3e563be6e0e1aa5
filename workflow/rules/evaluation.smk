"""Melception FID and MKL per run (design.md §7), and the study's table (design.md §9)."""


rule train_melception:
    """A Melception-architecture classifier on the dataset's own classes (the demo's stand-in for VGGSound's)."""
    input:
        clips=f"{R}/data/clips.tsv",
        train=data_shards("train"),
        valid=data_shards("valid"),
        codebook=[codebook_checkpoint()] if config["melception"]["train"]["reconstructed"] > 0 else [],
    output:
        f"{R}/eval/melception.ckpt",
    log:
        f"{LOGS}/train_melception.log",
    benchmark:
        f"{LOGS}/benchmarks/train_melception.tsv"
    conda:
        TORCH_ENV
    threads: THREADS
    resources:
        runtime=fixed_runtime(1440),
        mem_mb=by_attempt(16000),
        gpu=GPU,
    params:
        train=config["melception"]["train"],
        crop_frames=config["audio"]["crop_frames"],
    script:
        "../scripts/train_melception.py"


rule score_reference:
    """Melception outputs of the real validation spectrograms: one reference set shared by every run; and how often
    the evaluator recognises the real clips' classes."""
    input:
        clips=data_shards("valid"),
        melception=melception_checkpoint(),
        stats=melception_stats(),
    output:
        reference=f"{R}/eval/reference.npz",
        evaluator=f"{R}/eval/evaluator.json",
    log:
        f"{LOGS}/score_reference.log",
    benchmark:
        f"{LOGS}/benchmarks/score_reference.tsv"
    conda:
        TORCH_ENV
    threads: THREADS
    resources:
        runtime=calibrated_runtime("score_reference", 60),
        mem_mb=by_attempt(8000),
        gpu=GPU,
    params:
        crop_frames=config["audio"]["crop_frames"],
    script:
        "../scripts/score_reference.py"


rule reconstruct_validation:
    """The ceiling: every real validation clip encoded and decoded by the codebook, scored like a run."""
    input:
        clips=data_shards("valid"),
        codebook=codebook_checkpoint(),
    output:
        mels=f"{R}/reconstruction/samples/mels.npy",
        names=f"{R}/reconstruction/samples/videos.txt",
    log:
        f"{LOGS}/reconstruct_validation.log",
    benchmark:
        f"{LOGS}/benchmarks/reconstruct_validation.tsv"
    conda:
        TORCH_ENV
    threads: THREADS
    resources:
        runtime=calibrated_runtime("reconstruct_validation", 60),
        mem_mb=by_attempt(8000),
        gpu=GPU,
    params:
        crop_frames=config["audio"]["crop_frames"],
    script:
        "../scripts/reconstruct_validation.py"


rule score_samples:
    """FID, MKL (95% intervals over videos, spread over seeds), ISc, KID and class agreement of one row's samples
    (a run, its shuffled control or the reconstructions), and their Melception outputs for paired comparisons."""
    input:
        mels=f"{R}/{{sampleset}}/mels.npy",
        names=f"{R}/{{sampleset}}/videos.txt",
        reference=f"{R}/eval/reference.npz",
        melception=melception_checkpoint(),
        stats=melception_stats(),
    output:
        scores=f"{R}/{{sampleset}}/scores.json",
        outputs=f"{R}/{{sampleset}}/outputs.npz",
    log:
        f"{LOGS}/score_samples/{{sampleset}}.log",
    benchmark:
        f"{LOGS}/benchmarks/score_samples/{{sampleset}}.tsv"
    conda:
        TORCH_ENV
    threads: THREADS
    resources:
        runtime=calibrated_runtime("score_samples", 120),
        # the rehearsal's full Melception job peaked at 1.1 GB; the metrics of 768 videos x 10 samples with 1,000
        # bootstrap replicates at 0.4 GB; plus ~3 GB of CUDA runtime
        mem_mb=by_attempt(8000),
        gpu=GPU,
    params:
        metrics=config["metrics"],
        seeds=lambda w: samples_per_video_set(w.sampleset),
    script:
        "../scripts/score_samples.py"


rule compare_with_baseline:
    """A row against the baseline on the same validation videos: dKL and dFID with a paired bootstrap interval."""
    input:
        outputs=f"{R}/{{sampleset}}/outputs.npz",
        baseline=f"{R}/{ROWS[BASELINE]}/outputs.npz" if BASELINE else [],
        reference=f"{R}/eval/reference.npz",
    output:
        f"{R}/{{sampleset}}/comparison.json",
    log:
        f"{LOGS}/compare_with_baseline/{{sampleset}}.log",
    benchmark:
        f"{LOGS}/benchmarks/compare_with_baseline/{{sampleset}}.tsv"
    conda:
        CPU_ENV
    threads: THREADS
    resources:
        runtime=fixed_runtime(120),
        # numpy only: the paired bootstrap of two rows of 768 videos x 10 samples (1,000 replicates) peaks at 0.6 GB
        mem_mb=by_attempt(4000),
    params:
        metrics=config["metrics"],
        baseline=BASELINE,
        row=lambda w: ROW_OF[w.sampleset],
    script:
        "../scripts/compare_with_baseline.py"


rule compare_with_best:
    """A conditioned run against the best conditioned run (lowest MKL, read from their scores) on the same
    validation videos: dKL and dFID with a paired bootstrap interval (the best against itself: 0)."""
    input:
        scores=[f"{R}/{ROWS[name]}/scores.json" for name in COMPARED_WITH_BEST],
        outputs=[f"{R}/{ROWS[name]}/outputs.npz" for name in COMPARED_WITH_BEST],
        reference=f"{R}/eval/reference.npz",
    output:
        f"{R}/runs/{{run}}/samples/vs_best.json",
    log:
        f"{LOGS}/compare_with_best/{{run}}.log",
    benchmark:
        f"{LOGS}/benchmarks/compare_with_best/{{run}}.tsv"
    conda:
        CPU_ENV
    threads: THREADS
    resources:
        runtime=fixed_runtime(120),
        # as compare_with_baseline: it loads two rows' outputs and bootstraps their difference
        mem_mb=by_attempt(4000),
    params:
        metrics=config["metrics"],
        runs=COMPARED_WITH_BEST,
    script:
        "../scripts/compare_with_best.py"


rule compare_precision:
    """A conditioned run sampled in the other sampling precision (bf16 against fp32) against its own samples, on
    the same validation videos with the same seeds: dKL and dFID with a paired bootstrap interval."""
    input:
        outputs=f"{R}/runs/{{run}}/{OTHER_PRECISION}/outputs.npz",
        against=f"{R}/runs/{{run}}/samples/outputs.npz",
        reference=f"{R}/eval/reference.npz",
    output:
        precision_comparison("{run}"),
    log:
        f"{LOGS}/compare_precision/{{run}}.log",
    benchmark:
        f"{LOGS}/benchmarks/compare_precision/{{run}}.tsv"
    conda:
        CPU_ENV
    threads: THREADS
    resources:
        runtime=by_attempt(120),
        # as compare_with_baseline: it loads two rows' outputs and bootstraps their difference
        mem_mb=by_attempt(4000),
    params:
        metrics=config["metrics"],
        row=lambda w: f"{w.run}+{OTHER_PRECISION}",
        relation=f"{OTHER_PRECISION} vs {SAMPLING_PRECISION}",
    script:
        "../scripts/compare_precision.py"


rule aggregate_table:
    input:
        unpack(table_inputs),
        audio=expand(f"{R}/runs/{{run}}/audio", run=RUNS),
        clips=f"{R}/data/clips.tsv",
        manifests=data_shards("train") + data_shards("valid"),
    output:
        table=report(
            f"{R}/table.csv",
            caption="../report/table.rst",
            category="Results",
        ),
        comparisons=report(
            f"{R}/comparisons.csv",
            caption="../report/comparisons.rst",
            category="Results",
        ),
    log:
        f"{LOGS}/aggregate_table.log",
    benchmark:
        f"{LOGS}/benchmarks/aggregate_table.tsv"
    localrule: True
    conda:
        CPU_ENV
    resources:
        runtime=fixed_runtime(10),
    params:
        runs=[spec.to_dict() for spec in RUN_SPECS.values()],
        rows=ROWS,
        baseline=BASELINE,
        # the folder the table sits in holds every row's scores (as a function of the output, not a hard-coded path)
        results=lambda w, output: os.path.dirname(output.table),
        inputs=row_inputs(),
        settings=config["table"],
    script:
        "../scripts/aggregate_table.py"
