from ov3dseg_core.models.methods.sas.model import SAS, SASConfig

__all__ = ["SAS", "SASConfig"]
