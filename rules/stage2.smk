# Stage 2: sequence models over frozen Stage-1 embeddings (one job per model and Stage-1 run), and
# their own target per model.

S2 = f"{RESULTS}/stage2/{{model}}/{{backbone}}/fold{{fold}}"


rule train_sequence:
    input:
        embeddings=rules.embed.output.rows,
        studies=rules.index.output.studies,
    output:
        best=f"{S2}/best.pt",
        metrics=f"{S2}/metrics.json",
        studies=f"{S2}/predictions_studies.parquet",
        slices=f"{S2}/predictions_slices.parquet",
        curve=report(f"{S2}/learning_curve.png", category="Stage 2", labels={"model": "{model}", "backbone": "{backbone}", "fold": "{fold}"}),
    params:
        model=stage2_model,
        settings=stage2_settings(),
        embeddings=EMB,
        out=S2,
    log:
        f"{RESULTS}/logs/train_sequence/{{model}}-{{backbone}}-{{fold}}.log",
    benchmark:
        f"{S2}/benchmark.tsv"
    threads: 1
    resources:
        gpu=1,
    conda:
        "../envs/ct25d.yaml"
    shell:
        "ct25d train-sequence --embeddings {params.embeddings} --studies {input.studies} --fold {wildcards.fold} "
        "--model {params.model:q} --settings {params.settings:q} --runtime {STAGE2_RUNTIME:q} "
        "--out {params.out} > {log} 2>&1"


for _model in config["stage2"]["models"]:

    rule:
        name:
            f"stage2_{_model}"
        input:
            [f"{RESULTS}/stage2/{_model}/{b}/fold{f}/metrics.json" for b, f in STAGE1_RUNS],


rule stage2:
    input:
        [f"{RESULTS}/stage2/{m}/{b}/fold{f}/metrics.json" for m, b, f in STAGE2_RUNS],
