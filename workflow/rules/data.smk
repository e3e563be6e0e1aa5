"""Videos -> per-clip 10 s wav, video and mel, in shards (design.md §1-2)."""

# The synthetic generator renders a clip's frames in float32 with a few temporaries, ~24 bytes per pixel and colour
# (MB per clip): the rehearsal's 10 s 480x360 clips peaked at 2.9 GB, the demo's 2 s 128x96 ones far below 2 GB.
SYNTHETIC_CLIP_MB = (
    72e-6
    * config["audio"]["seconds"]
    * config["synthetic"]["source_fps"]
    * config["synthetic"]["height"]
    * config["synthetic"]["width"]
)


rule make_synthetic_videos:
    output:
        directory(f"{R}/raw"),
    log:
        f"{LOGS}/make_synthetic_videos.log",
    benchmark:
        f"{LOGS}/benchmarks/make_synthetic_videos.tsv"
    conda:
        CPU_ENV
    resources:
        runtime=fixed_runtime(10),
        mem_mb=by_attempt(max(2000, 1000 + round(SYNTHETIC_CLIP_MB))),
    params:
        synthetic=config["synthetic"],
        seconds=config["audio"]["seconds"],
    script:
        "../scripts/make_synthetic_videos.py"


rule list_clips:
    """Every clip with its class, split (the VAS rule) and shard; what is not a clip, with the reason."""
    input:
        raw_videos(),
    output:
        clips=f"{R}/data/clips.tsv",
        rejected=f"{R}/data/rejected.tsv",
    log:
        f"{LOGS}/list_clips.log",
    benchmark:
        f"{LOGS}/benchmarks/list_clips.tsv"
    conda:
        CPU_ENV
    resources:
        runtime=fixed_runtime(10),
        mem_mb=by_attempt(1000),
    params:
        dataset=config["dataset"],
        valid_per_class=(
            config["synthetic"]["valid_per_class"]
            if config["dataset"] == "synthetic"
            else config["vas"]["valid_per_class"]
        ),
        shards=config["shards"],
        listing=lambda wildcards: raw_listing(),
    script:
        "../scripts/list_clips.py"


rule preprocess_clips:
    """SpecVQGAN's ffmpeg chain per clip; clips that fail are listed with the reason, not fatal."""
    input:
        clips=f"{R}/data/clips.tsv",
    output:
        directory(f"{R}/data/{{split}}/shard{{shard}}"),
    log:
        f"{LOGS}/preprocess_clips/{{split}}-{{shard}}.log",
    benchmark:
        f"{LOGS}/benchmarks/preprocess_clips/{{split}}-{{shard}}.tsv"
    conda:
        CPU_ENV
    threads: THREADS
    resources:
        runtime=fixed_runtime(240),
        mem_mb=by_attempt(4000),
    params:
        data=data_params(),
    script:
        "../scripts/preprocess_clips.py"


rule download_vas:
    """RegNet's VAS.zip (design.md §1); on the login node, as compute nodes are often offline."""
    output:
        "resources/vas/VAS.zip",
    log:
        f"{LOGS}/download_vas.log",
    benchmark:
        f"{LOGS}/benchmarks/download_vas.tsv"
    localrule: True
    conda:
        CPU_ENV
    resources:
        runtime=fixed_runtime(240),
    params:
        url=config["vas"]["url"],
        md5=config["vas"]["md5"],
    script:
        "../scripts/download.py"


rule unpack_vas:
    input:
        "resources/vas/VAS.zip",
    output:
        directory("resources/vas/raw"),
    log:
        f"{LOGS}/unpack_vas.log",
    benchmark:
        f"{LOGS}/benchmarks/unpack_vas.tsv"
    localrule: True
    conda:
        CPU_ENV
    resources:
        runtime=fixed_runtime(60),
    script:
        "../scripts/unpack_vas.py"
