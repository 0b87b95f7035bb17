"""The Ray layer: worker actors that hold a loaded VGG-19, and a driver that only
schedules. Thin: all synthesis is the engine's, all bookkeeping the planner's."""
