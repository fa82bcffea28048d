"""Fleet sync: the central publishes each collection's signed feed, devices verify and apply it."""
