"""The main job: the whole life of a model, end to end on one machine (grows with every issue)."""
