"""Voxel geometry: particles, composites, the cell stack, label volumes from files, connectivity."""
