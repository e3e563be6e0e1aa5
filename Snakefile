# SpecVQGAN image-to-audio study: VAS videos -> frame features -> GPT over codebook tokens -> samples -> FID/MKL.
#   snakemake --cores 2 --configfile config/demo.yaml          the laptop demo  -> results/demo/table.csv
#   snakemake --profile profiles/slurm results/table.csv       the full study on a SLURM cluster


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/authors.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/codebook.smk"
include: "workflow/rules/transformer.smk"
include: "workflow/rules/vocoder.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/report.smk"


localrules:
    all,


rule all:
    default_target: True
    input:
        f"{R}/table.csv",
        REPORT_FILES,
