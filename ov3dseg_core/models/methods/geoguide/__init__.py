from ov3dseg_core.models.methods.geoguide.model import GeoGuide, GeoGuideConfig, resolve_backbone

__all__ = ["GeoGuide", "GeoGuideConfig", "resolve_backbone"]
