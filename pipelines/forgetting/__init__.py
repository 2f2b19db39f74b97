"""The forgetting study: what adaptation costs in general ability, LoRA beside full fine-tuning.

`domainfm forgetting <domain>` scores the full fine-tuning twin (trained by `domainfm train
--adapt-mode full`, same data, schedule and seed as the domain's LoRA model) on the domain's zero-shot
set and the generic held-out set, sweeps its WiSE-FT curve, and puts it beside base and LoRA as
evaluate scored them (metrics/<domain>/metrics.json, wise.json).
"""
