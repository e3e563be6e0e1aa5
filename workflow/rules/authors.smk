"""`vas.source: authors`: SpecVQGAN's own precomputed VAS mels and ResNet50 features and its official split lists
(i2a/data/authors.py) in place of the workflow's data chain. They land where the chain's own shards land
({results}/data/<split>/shard*, {results}/features/resnet50/...), so every later stage reads them unchanged."""

# SpecVQGAN's precomputed mels and ResNet50 features and its split lists (i2a/data/authors.py):
# the files to download, each with its MD5 from the authors' list (or vas.authors.checksums)
AUTHORS_INPUTS = config["dataset"] == "vas" and config["vas"]["source"] == "authors"
AUTHORS = config["vas"]["authors"]
AUTHORS_SUMS = authors.checksums(AUTHORS["checksums"]) if AUTHORS_INPUTS else {}
AUTHORS_FILES = authors.needed_files(AUTHORS_SUMS, features="resnet50" in used_backbones()) if AUTHORS_INPUTS else []


rule download_authors_vas:
    """One of the authors' files (a class's tar of mels or of ResNet50 features, a split list): resumable, checked
    against the authors' MD5 list; on the login node, as compute nodes are often offline."""
    output:
        "resources/vas/authors/{file}",
    log:
        f"{LOGS}/download_authors_vas/{{file}}.log",
    benchmark:
        f"{LOGS}/benchmarks/download_authors_vas/{{file}}.tsv"
    wildcard_constraints:
        file="|".join(re.escape(name) for name in AUTHORS_FILES) or "(?!x)x",
    localrule: True
    conda:
        CPU_ENV
    resources:
        runtime=fixed_runtime(240),
    params:
        url=lambda w: authors.file_url(w.file, AUTHORS["url"], AUTHORS["splits_url"]),
        md5=lambda w: AUTHORS_SUMS[w.file],
    script:
        "../scripts/download_authors_vas.py"


rule list_authors_clips:
    """The clip table of the official split lists: class, split and shard of every listed clip."""
    input:
        train=authors_file("vas_train.txt"),
        valid=authors_file("vas_valid.txt"),
    output:
        clips=f"{R}/data/clips.tsv",
        rejected=f"{R}/data/rejected.tsv",
    log:
        f"{LOGS}/list_authors_clips.log",
    benchmark:
        f"{LOGS}/benchmarks/list_authors_clips.tsv"
    conda:
        CPU_ENV
    resources:
        runtime=fixed_runtime(10),
        mem_mb=by_attempt(1000),
    params:
        shards=config["shards"],
    script:
        "../scripts/list_authors_clips.py"


rule import_authors_mels:
    """A data shard of the authors' mel spectrograms, read from their tars (no ffmpeg chain, no mel computed
    here); a listed clip without one is recorded as skipped, with the reason."""
    input:
        clips=f"{R}/data/clips.tsv",
        tars=authors_tars(authors.MELS),
    output:
        directory(f"{R}/data/{{split}}/shard{{shard}}"),
    log:
        f"{LOGS}/import_authors_mels/{{split}}-{{shard}}.log",
    benchmark:
        f"{LOGS}/benchmarks/import_authors_mels/{{split}}-{{shard}}.tsv"
    conda:
        CPU_ENV
    resources:
        runtime=fixed_runtime(60),
        mem_mb=by_attempt(2000),
    params:
        mel={
            "n_mels": config["audio"]["n_mels"],
            "keep_frames": config["audio"]["keep_frames"],
        },
    script:
        "../scripts/import_authors_mels.py"


rule import_authors_features:
    """A shard's ResNet50 features from the authors' tars, padded and cropped as extracted features are, one row
    per usable clip of the data shard."""
    input:
        clips=f"{R}/data/{{split}}/shard{{shard}}",
        tars=authors_tars(authors.RESNET50),
    output:
        features=f"{R}/features/resnet50/{{split}}/shard{{shard}}.npy",
        index=f"{R}/features/resnet50/{{split}}/shard{{shard}}.tsv",
    log:
        f"{LOGS}/import_authors_features/{{split}}-{{shard}}.log",
    benchmark:
        f"{LOGS}/benchmarks/import_authors_features/{{split}}-{{shard}}.tsv"
    conda:
        TORCH_ENV
    resources:
        runtime=fixed_runtime(60),
        mem_mb=by_attempt(4000),
    params:
        frames={
            "total": config["video"]["feat_frames"],
            "crop": config["video"]["feat_crop"],
        },
        dtype=config["features"]["dtype"],
    script:
        "../scripts/import_authors_features.py"


rule preprocess_authors_videos:
    """The VAS videos of a data shard's clips (the authors' mels) through the workflow's ffmpeg chain, for the
    backbones the authors published no features of (extract_features reads them clip by clip); a clip without a
    video is listed as skipped, with the reason."""
    input:
        clips=f"{R}/data/{{split}}/shard{{shard}}",
        videos=raw_videos(),
    output:
        directory(f"{R}/videos/{{split}}/shard{{shard}}"),
    log:
        f"{LOGS}/preprocess_authors_videos/{{split}}-{{shard}}.log",
    benchmark:
        f"{LOGS}/benchmarks/preprocess_authors_videos/{{split}}-{{shard}}.tsv"
    conda:
        CPU_ENV
    threads: THREADS
    resources:
        runtime=fixed_runtime(240),
        mem_mb=by_attempt(4000),
    params:
        data=data_params(),
        listing=lambda wildcards: raw_listing(),
    script:
        "../scripts/preprocess_authors_videos.py"


# With the authors' inputs their rules make the clip table, the data shards and the ResNet50 features; otherwise
# the workflow's own chain does.
if AUTHORS_INPUTS:

    ruleorder: list_authors_clips > list_clips
    ruleorder: import_authors_mels > preprocess_clips
    ruleorder: import_authors_features > extract_features

else:

    ruleorder: list_clips > list_authors_clips
    ruleorder: preprocess_clips > import_authors_mels
    ruleorder: extract_features > import_authors_features
