module github.com/meshblocks/meshblocks/examples

go 1.25.0

require github.com/meshblocks/meshblocks v0.0.0

replace github.com/meshblocks/meshblocks => ../
