# The comparison table of every approach: Stage-1 rules, Stage-2 models and the baselines.


def compare_reference():
    """The approach every other is compared with: `compare.reference` (a Stage-2 run name, as the seed's
    bi-LSTM), else the first Stage-2 model."""
    name = config["compare"].get("reference") or next(iter(config["stage2"]["models"]), None)
    return f"2.5D: Stage 2 {config['stage2']['models'][name]['name']}" if name in config["stage2"]["models"] else None


rule compare:
    input:
        stage1=[f"{RESULTS}/stage1/{b}/fold{f}/eval/{rule}/metrics.json" for b, f in STAGE1_RUNS for rule in ("head", "cosine")],
        stage2=[f"{RESULTS}/stage2/{m}/{b}/fold{f}/metrics.json" for m, b, f in STAGE2_RUNS],
        baselines=rules.baselines.input,
    output:
        csv=report(f"{RESULTS}/comparison/comparison.csv", category="Comparison"),
        md=f"{RESULTS}/comparison/comparison.md",
        long=f"{RESULTS}/comparison/comparison_long.csv",
        json=f"{RESULTS}/comparison/comparison.json",
        png=report(f"{RESULTS}/comparison/comparison.png", category="Comparison", caption="../workflow/report/comparison.rst"),
        reliability=report(f"{RESULTS}/comparison/reliability.png", category="Comparison", subcategory="Calibration"),
        roc=report(f"{RESULTS}/comparison/roc.png", category="Comparison", subcategory="ROC curves"),
        findings=report(f"{RESULTS}/comparison/findings.csv", category="Comparison", subcategory="Per finding"),
        findings_md=f"{RESULTS}/comparison/findings.md",
    params:
        out=f"{RESULTS}/comparison",
        settings=as_json({**config["compare"], "reference": compare_reference()}),
    log:
        f"{RESULTS}/logs/compare/compare.log",
    conda:
        "../envs/ct25d.yaml"
    shell:
        "ct25d compare --stage1 {input.stage1} --stage2 {input.stage2} --baselines {input.baselines} "
        "--settings {params.settings:q} --out {params.out} > {log} 2>&1"


rule comparison:
    input:
        rules.compare.output,
