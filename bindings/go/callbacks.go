package checkpoint

// #include <stdint.h>
import "C"

import (
	"fmt"
	"runtime/cgo"
)

// callbacks are one call's Go callbacks, reached from C through a cgo.Handle that lives exactly as
// long as the call. A panic in a callback is caught before it can unwind through C, and raised
// again once the library has returned.
type callbacks struct {
	progress   func(bytesHashed uint64)
	notify     func(what Notification, pid int) error
	refusal    error // what notify returned to stop CRIU
	panicValue any
	panicked   bool
}

func (c *callbacks) handle() (cgo.Handle, func()) {
	h := cgo.NewHandle(c)
	return h, h.Delete
}

// rethrow raises again, on the caller's goroutine, a panic a callback raised in C's frames.
func (c *callbacks) rethrow() {
	if c.panicked {
		panic(c.panicValue)
	}
}

// withRefusal attaches to err what the notify callback returned to stop CRIU.
func (c *callbacks) withRefusal(err error) error {
	if e, ok := err.(*Error); ok && c.refusal != nil {
		e.Err = c.refusal
	}
	return err
}

//export ncGoNotify
func ncGoNotify(what C.int, pid C.int, h C.uintptr_t) (result C.int) {
	c := cgo.Handle(h).Value().(*callbacks)
	defer func() {
		if v := recover(); v != nil {
			c.panicked, c.panicValue = true, v
			c.refusal = fmt.Errorf("the notify callback panicked: %v", v)
			result = 1
		}
	}()
	if c.panicked {
		return 1
	}
	if c.notify == nil {
		return 0
	}
	if err := c.notify(Notification(what), int(pid)); err != nil {
		c.refusal = err
		return 1
	}
	return 0
}

//export ncGoProgress
func ncGoProgress(bytes C.ulonglong, h C.uintptr_t) {
	c := cgo.Handle(h).Value().(*callbacks)
	defer func() {
		if v := recover(); v != nil {
			c.panicked, c.panicValue = true, v
		}
	}()
	if !c.panicked && c.progress != nil {
		c.progress(uint64(bytes))
	}
}
