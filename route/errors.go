package route

import (
	"errors"
	"fmt"
)

// Sentinel errors.
var (
	// ErrInvalidConfig wraps every validation failure from Build.
	ErrInvalidConfig = errors.New("route: invalid config")
	// ErrUnknownHost is returned for a request to a host or IP that is
	// neither a known Service nor an endpoint.
	ErrUnknownHost = errors.New("route: unknown host")
	// ErrNoHealthyBackend means a destination has no usable endpoint.
	ErrNoHealthyBackend = errors.New("route: no healthy backend")
)

// FieldError is one validation failure: the object, the field path and what
// is wrong, e.g. "VirtualService default/reviews: spec.http[0].route[1].weight: must be >= 0".
type FieldError struct {
	// Object is "<Kind> <namespace>/<name>".
	Object string
	// Field is the path inside the object.
	Field string
	// Msg says what is wrong.
	Msg string
}

func (e *FieldError) Error() string {
	if e.Object == "" {
		return fmt.Sprintf("%s: %s", e.Field, e.Msg)
	}
	return fmt.Sprintf("%s: %s: %s", e.Object, e.Field, e.Msg)
}

// Is makes every FieldError match ErrInvalidConfig.
func (e *FieldError) Is(target error) bool { return target == ErrInvalidConfig }
