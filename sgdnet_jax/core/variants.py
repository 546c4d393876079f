"""The named model variants: presets of `config.model` fields, the one list of them.

`configs/default.py` applies them (`apply_variant`, the `variant` argument of every experiment
config) and `porting/key_tables` builds the upstream networks from them. The keys are model
fields, dotted below `config.model` (`sgdc.local_branch`). This module imports nothing, so that
loading a config imports no JAX.
"""

# Named variants of the paper's Tables 4 and 5: presets of model fields, so that every ablation
# can also be reached field by field.
VARIANTS = {
  "sgdnet": {},  # SGE + SGDC on x1/x2/x3 (Table 4 row 4)
  "cto": {"edge_branch": "eam", "skip_fusion": "edge_gate"},  # CTO: EAM + x * sigmoid(edge)
  "baseline": {"edge_branch": "none", "skip_fusion": "none"},  # no boundary branch (row 1)
  "sge_add": {"skip_fusion": "guidance_add"},  # SGE guidance added element-wise (row 2)
  "sge_contmix": {"skip_fusion": "contmix"},  # SGE + ContMix (row 3)
  "sgdc_self_guidance": {"sgdc.guidance": "self"},  # SGDC fed by F_X only (Table 5)
  "sgdc_no_local": {"sgdc.local_branch": False},  # SGDC without its local branch (Table 5)
  "sgdc_no_dynamic": {"sgdc.dynamic_branch": False},  # SGDC without its dynamic branch (Table 5)
  "sgdc_paper_eq": {"sgdc.form": "paper"},  # SGDC in the paper's equation form (Eqs. 3-4)
}
