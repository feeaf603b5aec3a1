"""`pgen loop`: the closed loop of populations, generator versions behind a promotion gate, Serve and seeding."""
