module kiln.bench/inventory

go 1.19
