"""The course itself: the headless runner and report card, the environments' doctor, learner editions, hygiene, strip."""
