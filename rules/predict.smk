# Unlabelled datasets (role predict): the fold models of the chosen approaches combined as on an
# external set, per dataset: results/predictions/<dataset>/<approach>/{studies.csv,slices.parquet,*.png}.

PREDICT = config["predict"]
# `best` is read from the comparison, so predict then waits for it; `reference` and named approaches
# only need their runs (every run of the comparison is an input: the names resolve when the job runs).
PREDICT_NEEDS_COMPARISON = "best" in PREDICT["approaches"]
# What the positive calls' saliency maps read (any approach may be chosen when the job runs): every
# Stage-1 network (Stage 1's and Stage 2's maps; Stage 2 finds its network in its embeddings'
# settings.json) and every image baseline's own network, with the volume index for the 3D nets.
PREDICT_VOLUME_NETS = any(baseline_kind(b) == "volume" for b in SALIENCY_BASELINES)
PREDICT_NETWORKS = [
    *(rules.train_slices.output.best.format(backbone=b, fold=f) for b, f in STAGE1_RUNS),
    *(rules.embed.output.settings.format(backbone=b, fold=f) for b, f in STAGE1_RUNS if STAGE2_RUNS),
    *(rules.train_baseline.output.best.format(baseline=b, fold=f) for b, f in BASELINE_RUNS if b in SALIENCY_BASELINES),
]


rule predict_dataset:
    wildcard_constraints:
        dataset="|".join(PREDICT_SETS) or "^$",
    input:
        stage1=rules.compare.input.stage1,
        stage2=rules.compare.input.stage2,
        baselines=rules.compare.input.baselines,
        comparison=rules.compare.output.json if PREDICT_NEEDS_COMPARISON else [],
        studies=rules.scan.output.studies,
        scan=rules.scan.output.settings,
        manifest=rules.ingest_report.output.manifest,
        choice=rules.ingest_report.output.choice,
        rejections=rules.ingest_report.output.rejections,
        index=rules.index.output.slices,
        skipped=rules.index.output.rejected,
        networks=PREDICT_NETWORKS,
        volumes=rules.volume_index.output[0] if PREDICT_VOLUME_NETS else [],
    output:
        directory(f"{RESULTS}/predictions/{{dataset}}"),
    params:
        settings=as_json({
            **PREDICT,
            "reference": compare_reference(),
            **{k: config["compare"][k] for k in ("labels", "min_positives") if k in config["compare"]},
        }),
        stage2=[f"{name}={path}" for name, path in STAGE2_METRICS],
        comparison=lambda wc, input: f"--comparison {input.comparison}" if PREDICT_NEEDS_COMPARISON else "",
        ingest=f"{RESULTS}/{{dataset}}",
        volumes=lambda wc, input: f"--volumes {input.volumes}" if PREDICT_VOLUME_NETS else "",
    log:
        f"{RESULTS}/logs/predict/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict/{{dataset}}.tsv",
    conda:
        "../envs/ct25d.yaml"
    shell:
        "ct25d predict --dataset {wildcards.dataset} --stage1 {input.stage1} --stage2 {params.stage2} "
        "--baselines {input.baselines} {params.comparison} --ingest {params.ingest} --index {input.index} "
        "--skipped {input.skipped} {params.volumes} --settings {params.settings:q} --threads {threads} "
        "--out {output} > {log} 2>&1"


rule predict:
    input:
        expand(rules.predict_dataset.output, dataset=PREDICT_SETS),


# Portable bundles (MONAI layout) of the chosen approaches: `ct25d predict-bundle` runs one on a
# DICOM folder with no workflow. The preprocessing settings travel with it; the pseudonym salt does not.
BUNDLE = config["bundle"]
PREDICT_ARCHIVE = next(
    ({k: DATASETS[d][k] for k in ("layout", "label_key", "folder_pattern") if k in DATASETS[d]} for d in PREDICT_SETS),
    {"layout": "dicom_tree"},
)


rule bundle:
    input:
        stage1=rules.compare.input.stage1,
        stage2=rules.compare.input.stage2,
        baselines=rules.compare.input.baselines,
        comparison=rules.compare.output.json,
    output:
        directory(f"{RESULTS}/bundles"),
    params:
        settings=as_json({
            **BUNDLE,
            "reference": compare_reference(),
            **{k: config["compare"][k] for k in ("labels", "min_positives") if k in config["compare"]},
            "ingest": {k: v for k, v in config["ingest"].items() if k != "pseudonym_salt"},
            "preprocess": config["preprocess"],
            "volume": config["baselines"]["volume"],
            "archive": PREDICT_ARCHIVE,
            "top_slices": PREDICT.get("top_slices", 4),
        }),
        stage2=[f"{name}={path}" for name, path in STAGE2_METRICS],
    log:
        f"{RESULTS}/logs/bundle/bundle.log",
    benchmark:
        f"{RESULTS}/benchmarks/bundle/bundle.tsv",
    conda:
        "../envs/ct25d.yaml"
    shell:
        "ct25d export --stage1 {input.stage1} --stage2 {params.stage2} --baselines {input.baselines} "
        "--comparison {input.comparison} --settings {params.settings:q} --out {output} > {log} 2>&1"
