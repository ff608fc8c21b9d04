"""The llp stage\x27s components: LLP training and its report."""
