package istio_test

import (
	"fmt"

	"github.com/meshblocks/meshblocks/route/istio"
)

func ExampleConvert() {
	objs, err := istio.Decode([]byte(`
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: -10
`))
	if err != nil {
		panic(err)
	}
	_, err = istio.Convert(objs, "")
	fmt.Println(err)
	// Output: route/istio: VirtualService default/reviews: spec.http[0].route[0].weight: must be >= 0
}
