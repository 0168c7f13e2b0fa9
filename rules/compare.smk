# The comparison table of every approach: Stage-1 rules, Stage-2 models and the baselines.


rule compare:
    input:
        stage1=rules.stage1.input,
        stage2=[f"{RESULTS}/stage2/{m}/{b}/fold{f}/metrics.json" for m, b, f in STAGE2_RUNS],
        baselines=rules.baselines.input,
    output:
        csv=report(f"{RESULTS}/comparison/comparison.csv", category="Comparison"),
        md=f"{RESULTS}/comparison/comparison.md",
        png=report(f"{RESULTS}/comparison/comparison.png", category="Comparison"),
    params:
        out=f"{RESULTS}/comparison",
    log:
        f"{RESULTS}/logs/compare/compare.log",
    conda:
        "../envs/ct25d.yaml"
    shell:
        "ct25d compare --stage1 {input.stage1} --stage2 {input.stage2} --baselines {input.baselines} "
        "--out {params.out} > {log} 2>&1"


rule comparison:
    input:
        rules.compare.output,
