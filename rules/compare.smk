# The comparison table of every approach: Stage-1 rules, Stage-2 models and the baselines.


def compare_reference():
    """The approach every other is compared with: `compare.reference` (a config name, as the seed's
    bi-LSTM, resolved by `ct25d compare`), else the first Stage-2 model on the first backbone."""
    first = next(iter(config["stage2"]["models"]), None)
    return config["compare"].get("reference") or (first and f"{config['stage1']['backbones'][0]}:{first}")


# Each Stage-2 run's metrics, named `<backbone>:<model>`: the same model on two backbones is two approaches.
STAGE2_METRICS = [(f"{b}:{m}", f"{RESULTS}/stage2/{m}/{b}/fold{f}/metrics.json") for m, b, f in STAGE2_RUNS]


# External sets in the CQ500 layout: their reads.csv gives each reader's calls.
CQ500_SETS = [d for d in DATASETS if DATASETS[d]["layout"] == "cq500" and DATASETS[d]["role"] == "external"]


rule compare:
    input:
        stage1=[f"{RESULTS}/stage1/{b}/fold{f}/eval/{rule}/metrics.json" for b, f in STAGE1_RUNS for rule in ("head", "cosine")],
        stage2=[path for _, path in STAGE2_METRICS],
        baselines=rules.baselines.input,
        reads=[synthetic_dir(d) if is_synthetic(d) else label_file(d) for d in CQ500_SETS],
        patients=f"{RESULTS}/splits/folds.parquet",
        studies=rules.index.output.studies,
        pointing=SALIENCY_POINTING,
    output:
        csv=report(f"{RESULTS}/comparison/comparison.csv", category="Comparison"),
        md=f"{RESULTS}/comparison/comparison.md",
        long=f"{RESULTS}/comparison/comparison_long.csv",
        json=f"{RESULTS}/comparison/comparison.json",
        png=report(f"{RESULTS}/comparison/comparison.png", category="Comparison", caption="../workflow/report/comparison.rst"),
        reliability=report(f"{RESULTS}/comparison/reliability.png", category="Comparison", subcategory="Calibration"),
        roc=report(f"{RESULTS}/comparison/roc.png", category="Comparison", subcategory="ROC and PR curves"),
        pr=report(f"{RESULTS}/comparison/pr.png", category="Comparison", subcategory="ROC and PR curves"),
        confusion=report(f"{RESULTS}/comparison/confusion.png", category="Comparison", subcategory="Confusion matrices"),
        strips=report(f"{RESULTS}/comparison/strips.png", category="Comparison", subcategory="Slice probabilities"),
        claims=report(f"{RESULTS}/comparison/claims.csv", category="Comparison", subcategory="The seeds' claims"),
        claims_md=f"{RESULTS}/comparison/claims.md",
        findings=report(f"{RESULTS}/comparison/findings.csv", category="Comparison", subcategory="Per finding"),
        findings_md=f"{RESULTS}/comparison/findings.md",
        readers=report(f"{RESULTS}/comparison/readers.csv", category="Comparison", subcategory="Agreement with readers"),
        scores=f"{RESULTS}/comparison/scores.parquet",
        length=report(f"{RESULTS}/comparison/length_check.csv", category="Comparison", subcategory="Length check"),
        length_md=f"{RESULTS}/comparison/length_check.md",
    params:
        out=f"{RESULTS}/comparison",
        settings=as_json({**config["compare"], "reference": compare_reference(), "salt": config["ingest"]["pseudonym_salt"]}),
        readers=[f"{d}={label_file(d)}" for d in CQ500_SETS],
        stage2=[f"{name}={path}" for name, path in STAGE2_METRICS],
        pointing="--pointing" if SALIENCY["enabled"] else "",
    log:
        f"{RESULTS}/logs/compare/compare.log",
    benchmark:
        f"{RESULTS}/benchmarks/compare/compare.tsv",
    conda:
        "../envs/ct25d.yaml"
    shell:
        "ct25d compare --stage1 {input.stage1} --stage2 {params.stage2} --baselines {input.baselines} "
        "--readers {params.readers} --patients {input.patients} --studies {input.studies} {params.pointing} {input.pointing} --settings {params.settings:q} "
        "--out {params.out} > {log} 2>&1"


rule comparison:
    input:
        rules.compare.output,
        rules.saliency_gallery.output if SALIENCY["enabled"] else [],
