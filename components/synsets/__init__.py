"""The synsets stage's component: simulated tags (the demo) and tags -> WordNet synsets."""
