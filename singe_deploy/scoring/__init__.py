"""Channel importance: SInGE (integrated gradients along each unit's path) and the baseline criteria."""
