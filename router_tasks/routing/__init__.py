"""Routing policy, in one place: turning a router's predictions into a choice of model.

A router (`router_tasks.routers`) predicts; a policy here decides. The evaluation, the
CLI (`tela score`, `tela route`, `tela calibrate`) and the serving gateway all share these.

    choice.py      two models (`route_two`: strong when strong_win_rate >= threshold) and
                   many (`cheapest_adequate`, `best_under_budget`, the cost/quality
                   frontier `route_frontier` / `frontier_choice` / `frontier_path`),
                   `routing_cost`
    thresholds.py  the calibration maths: `threshold_for_share`, `checked_scores`,
                   `NEUTRAL_THRESHOLD`, `target_for_budget` (the `calibrate` stage that
                   stores them is `evaluation.calibration`)
    policy.py      model names that select a policy (`tela-auto@0.3`, `router-mf-0.4`,
                   `tela-cheapest@0.8`, ...): `parse_model_name`, and `decide` for one prompt
    cascade.py     live cascades: ask cheap models first, escalate when a check fails
                   (measured on recorded replies by `evaluation.cascades`)
    scoring.py     score and route prompt files with a trained router (`tela score`,
                   `tela route`)
"""
