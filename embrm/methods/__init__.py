"""The seeds' further methods over cached embeddings and candidate pools (each usable from Python and the CLI):

    laser       LinUCB selection of a reward model per prompt (Nguyen et al., LASeR)
    moe         routed mixture-of-experts reward heads (Quan, DMoERM)
    composite   constrained composite rewards with per-component thresholds (Moskovitz et al.)
    policy      policy-side over-optimisation on candidate pools: KL-regularised optimum, DPO / RPO
"""
