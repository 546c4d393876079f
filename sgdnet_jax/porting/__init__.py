"""PyTorch weight porting, both ways, for the upstream layouts (SPEC §5).

  variables = load_torch("res2net50_v1b_26w_4s-3cf99910.pth", "res2net50_v1b", template)
  model.apply(variables, images)      # the result is {'params', 'batch_stats'} ...
  print(variables.audit.describe())   # ... with what was loaded, checked and ignored
  state_dict, export_audit = export_torch(variables, "sgdnet")
  write_state_dict(state_dict, "sgdnet.safetensors")

Layouts: res2net50_v1b, timm_res2net50d, cto, sgdnet, sge, sgdc (see `key_tables.LAYOUTS`).
.pth files are read without torch (`torch_files`); torch is imported only to write them.
"""

from sgdnet_jax.porting.key_tables import LAYOUTS
from sgdnet_jax.porting.naming import path_to_torch_key, torch_key_to_path
from sgdnet_jax.porting.port import (
  ExportAudit,
  ExportResult,
  PortAudit,
  PortingError,
  PortResult,
  check_structure,
  convert_state_dict,
  export_torch,
  load_torch,
)
from sgdnet_jax.porting.state_dicts import CheckpointFileError, read_state_dict, write_state_dict

__all__ = [
  "CheckpointFileError",
  "ExportAudit",
  "ExportResult",
  "LAYOUTS",
  "PortAudit",
  "PortResult",
  "PortingError",
  "check_structure",
  "convert_state_dict",
  "export_torch",
  "load_torch",
  "path_to_torch_key",
  "read_state_dict",
  "torch_key_to_path",
  "write_state_dict",
]
