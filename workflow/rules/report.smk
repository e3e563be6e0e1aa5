"""The report's figures and pages (`snakemake --report report.html` after a run): the results table, training
curves, MKL/FID per run, and a listening gallery per run. Cheap CPU jobs, run where snakemake runs."""


rule report_results:
    """The table as a page, and MKL/FID per run with their intervals."""
    input:
        f"{R}/table.csv",
    output:
        table=report(
            f"{R}/report/table.html",
            caption="../report/results_table.rst",
            category="Results",
        ),
        scores=report(
            f"{R}/report/scores.svg",
            caption="../report/scores.rst",
            category="Results",
        ),
    log:
        f"{LOGS}/report_results.log",
    benchmark:
        f"{LOGS}/benchmarks/report_results.tsv"
    localrule: True
    conda:
        CPU_ENV
    resources:
        runtime=fixed_runtime(10),
        mem_mb=by_attempt(2000),
    script:
        "../scripts/report_results.py"


rule report_landing:
    """The report's front page: the answer first (which runs beat the baseline, by how much; which cannot be told
    from the best), every run best first with its paired intervals; the ceiling, the controls, the probes, the
    evaluator's and the codebook's health. And the method page: how the numbers are made, what they cannot say."""
    input:
        table=f"{R}/table.csv",
        comparisons=f"{R}/comparisons.csv",
        evaluator=f"{R}/eval/evaluator.json",
        probes=probe_files(),
        codebook=[f"{R}/codebook/summary.json"] if trained_codebook() else [],
    output:
        landing=f"{R}/report/landing.rst",
        method=report(
            f"{R}/report/method.html",
            caption="../report/method.rst",
            category="Method and caveats",
        ),
    log:
        f"{LOGS}/report_landing.log",
    benchmark:
        f"{LOGS}/benchmarks/report_landing.tsv"
    localrule: True
    conda:
        CPU_ENV
    resources:
        runtime=fixed_runtime(10),
    params:
        dataset="the built-in synthetic demo" if config["dataset"] == "synthetic" else "VAS",
        bootstrap=config["metrics"]["bootstrap"],
    script:
        "../scripts/report_landing.py"


rule plot_codebook:
    """A trained codebook's health per epoch: validation L1, codes used, perplexity; the kept epoch marked."""
    input:
        metrics=f"{R}/codebook/metrics.csv",
        summary=f"{R}/codebook/summary.json",
    output:
        report(
            f"{R}/report/codebook.svg",
            caption="../report/codebook.rst",
            category="Training curves",
            subcategory="Codebook",
            labels={"run": "codebook"},
        ),
    log:
        f"{LOGS}/plot_codebook.log",
    benchmark:
        f"{LOGS}/benchmarks/plot_codebook.tsv"
    localrule: True
    conda:
        CPU_ENV
    resources:
        runtime=fixed_runtime(10),
        mem_mb=by_attempt(2000),
    script:
        "../scripts/plot_codebook.py"


rule plot_loss_curve:
    """One trained run's training and validation loss per epoch."""
    input:
        f"{R}/runs/{{run}}/metrics.csv",
    output:
        report(
            f"{R}/report/loss/{{run}}.svg",
            caption="../report/loss_curve.rst",
            category="Training curves",
            subcategory="Validation loss",
            labels={"run": "{run}"},
        ),
    log:
        f"{LOGS}/plot_loss_curve/{{run}}.log",
    benchmark:
        f"{LOGS}/benchmarks/plot_loss_curve/{{run}}.tsv"
    localrule: True
    conda:
        CPU_ENV
    resources:
        runtime=fixed_runtime(10),
        mem_mb=by_attempt(2000),
    script:
        "../scripts/plot_loss_curve.py"


rule plot_training_overview:
    """Every trained run's validation loss and learning rate in one plot each, to compare runs."""
    input:
        expand(f"{R}/runs/{{run}}/metrics.csv", run=TRAINED_RUNS),
    output:
        loss=report(
            f"{R}/report/validation_loss.svg",
            caption="../report/validation_loss.rst",
            category="Training curves",
            subcategory="Validation loss",
            labels={"run": "all runs"},
        ),
        lr=report(
            f"{R}/report/learning_rate.svg",
            caption="../report/learning_rate.rst",
            category="Training curves",
            subcategory="Learning rate",
            labels={"run": "all runs"},
        ),
    log:
        f"{LOGS}/plot_training_overview.log",
    benchmark:
        f"{LOGS}/benchmarks/plot_training_overview.tsv"
    localrule: True
    conda:
        CPU_ENV
    resources:
        runtime=fixed_runtime(10),
        mem_mb=by_attempt(2000),
    params:
        runs=TRAINED_RUNS,
    script:
        "../scripts/plot_training_overview.py"


rule plot_lr_find:
    """One run's learning-rate finder: the loss against the LR of the range test, the suggested LR marked."""
    input:
        f"{R}/runs/{{run}}/lr_find.json",
    output:
        report(
            f"{R}/report/lr_find/{{run}}.svg",
            caption="../report/lr_find.rst",
            category="Training curves",
            subcategory="Learning-rate finder",
            labels={"run": "{run}"},
        ),
    log:
        f"{LOGS}/plot_lr_find/{{run}}.log",
    benchmark:
        f"{LOGS}/benchmarks/plot_lr_find/{{run}}.tsv"
    localrule: True
    conda:
        CPU_ENV
    resources:
        runtime=fixed_runtime(10),
        mem_mb=by_attempt(2000),
    script:
        "../scripts/plot_lr_find.py"


rule listening_gallery:
    """For a run's first vocoded validation videos: frame, real and generated spectrogram, both sounds."""
    input:
        audio=f"{R}/runs/{{run}}/audio",
        mels=f"{R}/runs/{{run}}/samples/mels.npy",
        names=f"{R}/runs/{{run}}/samples/videos.txt",
        valid=data_shards("valid"),
    output:
        report(
            f"{R}/report/gallery/{{run}}.html",
            caption="../report/gallery.rst",
            category="Listening gallery",
            labels={"run": "{run}"},
        ),
    log:
        f"{LOGS}/listening_gallery/{{run}}.log",
    benchmark:
        f"{LOGS}/benchmarks/listening_gallery/{{run}}.tsv"
    localrule: True
    conda:
        CPU_ENV
    resources:
        runtime=fixed_runtime(20),
        mem_mb=by_attempt(4000),
    params:
        videos=config["report"]["gallery_videos"],
        vocoder={"melgan": "MelGAN", "griffin_lim": "Griffin-Lim"}[config["vocoder"]["kind"]],
    script:
        "../scripts/listening_gallery.py"
