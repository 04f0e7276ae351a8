"""A partition owns a node group: its resources, its scheduler and its launcher."""
