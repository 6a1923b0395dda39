package cel_test

import (
	"fmt"

	"github.com/meshblocks/meshblocks/authz"
	"github.com/meshblocks/meshblocks/authz/cel"
)

func ExampleCompiler_Compile() {
	c, err := cel.NewCompiler()
	if err != nil {
		panic(err)
	}
	cond, err := c.Compile(`request.path.startsWith("/api/") && "x-user" in request.headers`)
	if err != nil {
		panic(err)
	}
	for _, r := range []*authz.Request{
		{Layer: authz.L7, Path: "/api/v1", Headers: map[string]string{"x-user": "alice"}},
		{Layer: authz.L7, Path: "/api/v1"},
	} {
		ok, err := cond.Match(r)
		fmt.Println(ok, err)
	}
	_, err = c.Compile(`"GET"`)
	fmt.Println(err)
	// Output:
	// true <nil>
	// false <nil>
	// cel: expression has type string, want bool
}
