# ct25d: head-CT DICOM archives -> cached, reproducible artifacts -> 2D / 2.5D / 3D classifiers.
#
#   snakemake all --cores 8 --resources gpu=2      (the target first: list options swallow it)
#   snakemake ingest --cores 2                     (one stage and what it needs)
#   snakemake predict --cores 2                    (the chosen models on the role-predict datasets)
#   snakemake bundle --cores 2                     (the chosen models as portable bundles: ct25d predict-bundle)
#   snakemake all --profile workflow/profiles/slurm
#
# Rules are thin: each runs one `ct25d` subcommand; all logic lives in src/ct25d.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/synth.smk"
include: "rules/ingest.smk"
include: "rules/preprocess.smk"
include: "rules/stage1.smk"
include: "rules/stage2.smk"
include: "rules/baselines.smk"
include: "rules/saliency.smk"
include: "rules/compare.smk"
include: "rules/predict.smk"


rule all:
    default_target: True
    input:
        rules.ingest.input,
        rules.preprocess.input,
        rules.stage1.input,
        rules.stage2.input,
        rules.baselines.input,
        rules.comparison.input,
        rules.predict.input,
        rules.bundle.output,
