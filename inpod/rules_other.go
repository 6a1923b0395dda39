//go:build !linux

package inpod

import "context"

// Apply is not supported on this system.
func (*Rules) Apply(context.Context, *Netns) error { return errUnsupported }

// Remove is not supported on this system.
func (*Rules) Remove(context.Context, *Netns) error { return errUnsupported }
