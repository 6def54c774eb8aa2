"""ov3dseg core."""
