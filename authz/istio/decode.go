package istio

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
	"sigs.k8s.io/yaml"
)

// DocumentError reports a document, or an item of a v1 List, that could not
// be read as an object at all: it is not YAML, not a mapping, or it is an
// Istio object whose kind, apiVersion or metadata cannot be read. Such a
// document cannot be attributed to a namespace, so no object is returned
// for it; callers that enforce policy must treat it as fatal.
type DocumentError struct {
	// Doc is the index of the document in the input, from 0, and Line the
	// line of the input (from 1) where it starts.
	Doc, Line int
	// Item is the path of the List item at fault ("items[2]"), if any.
	Item string
	Err  error
}

// Error returns "istio: document D (line L)[ items[i]]: cannot decode: ...".
func (e *DocumentError) Error() string {
	where := fmt.Sprintf("document %d (line %d)", e.Doc, e.Line)
	if e.Item != "" {
		where += " " + e.Item
	}
	return fmt.Sprintf("istio: %s: cannot decode: %v", where, e.Err)
}

// Unwrap returns ErrDecode and the cause.
func (e *DocumentError) Unwrap() []error { return []error{ErrDecode, e.Err} }

// document is one YAML document of an input and the line it starts on.
type document struct {
	body []byte
	line int
}

// documents splits data like SplitDocuments and finds the line each
// document starts on: the documents are, in order, runs of whole lines of
// data.
func documents(data []byte) []document {
	docs := SplitDocuments(data)
	out := make([]document, len(docs))
	pos, line := 0, 1
	for i, d := range docs {
		at := pos
		if j := bytes.Index(data[pos:], d); j >= 0 {
			at = pos + j
		}
		line += bytes.Count(data[pos:at], []byte("\n"))
		out[i] = document{body: d, line: line}
		line += bytes.Count(d, []byte("\n"))
		pos = at + len(d)
	}
	return out
}

var yamlLine = regexp.MustCompile(`\bline (\d+)\b`)

// shiftedError is a YAML error whose line numbers were made relative to the
// whole input instead of the document.
type shiftedError struct {
	msg string
	err error
}

func (e *shiftedError) Error() string { return e.msg }
func (e *shiftedError) Unwrap() error { return e.err }

func shiftLines(err error, first int) error {
	msg := yamlLine.ReplaceAllStringFunc(err.Error(), func(s string) string {
		n, convErr := strconv.Atoi(strings.TrimPrefix(s, "line "))
		if convErr != nil {
			return s
		}
		return "line " + strconv.Itoa(n+first-1)
	})
	return &shiftedError{msg: msg, err: err}
}

// decodeDocument turns one YAML document into JSON values (map[string]any,
// []any, string, json.Number, bool, nil), numbers kept exact.
func decodeDocument(doc []byte) (any, error) {
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return nil, err
	}
	return decodeJSON(js)
}

func decodeJSON(js []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return v, nil
}

// describe names a JSON value for an error message.
func describe(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case string:
		return fmt.Sprintf("string %q", v)
	case json.Number:
		return "number " + v.String()
	case bool:
		return fmt.Sprintf("bool %t", v)
	case []any:
		return "a list"
	case map[string]any:
		return "a mapping"
	}
	return fmt.Sprintf("%T", v)
}

// fieldError is one decoding problem at a field path.
type fieldError struct{ path, msg string }

// checkMessage reports, with field paths in the user's terms, every reason
// protojson would refuse to decode v as a message of type md: unknown or
// repeated fields, values of the wrong type, null list elements, unknown
// enum names. It accepts exactly what protojson accepts for the kinds the
// Istio security API uses (messages, strings, enums, string maps, lists).
func checkMessage(path string, v any, md protoreflect.MessageDescriptor, errs *[]fieldError) {
	if v == nil {
		return
	}
	obj, ok := v.(map[string]any)
	if !ok {
		*errs = append(*errs, fieldError{path, "must be a mapping, got " + describe(v)})
		return
	}
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	seen := map[protoreflect.FieldNumber]string{}
	fields := md.Fields()
	for _, k := range keys {
		fd := fields.ByJSONName(k)
		if fd == nil {
			fd = fields.ByTextName(k)
		}
		if fd == nil {
			msg := fmt.Sprintf("unknown field %q", k)
			if s := suggest(k, fields); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			*errs = append(*errs, fieldError{path, msg})
			continue
		}
		if other, dup := seen[fd.Number()]; dup {
			*errs = append(*errs, fieldError{path, fmt.Sprintf("field %q is given twice (also as %q)", k, other)})
			continue
		}
		seen[fd.Number()] = k
		checkField(path+"."+k, obj[k], fd, errs)
	}
}

func checkField(path string, v any, fd protoreflect.FieldDescriptor, errs *[]fieldError) {
	if v == nil {
		return // protojson leaves a null field unset
	}
	switch {
	case fd.IsMap():
		m, ok := v.(map[string]any)
		if !ok {
			*errs = append(*errs, fieldError{path, "must be a mapping, got " + describe(v)})
			return
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			checkValue(path+"["+k+"]", m[k], fd.MapValue(), errs)
		}
	case fd.IsList():
		l, ok := v.([]any)
		if !ok {
			*errs = append(*errs, fieldError{path, "must be a list, got " + describe(v)})
			return
		}
		for i, e := range l {
			checkValue(fmt.Sprintf("%s[%d]", path, i), e, fd, errs)
		}
	default:
		checkValue(path, v, fd, errs)
	}
}

// checkValue checks one singular value, list element or map value; null is
// refused here (protojson accepts it only for a whole field).
func checkValue(path string, v any, fd protoreflect.FieldDescriptor, errs *[]fieldError) {
	if v == nil {
		*errs = append(*errs, fieldError{path, "must not be null"})
		return
	}
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		checkMessage(path, v, fd.Message(), errs)
	case protoreflect.StringKind:
		if _, ok := v.(string); !ok {
			*errs = append(*errs, fieldError{path, "must be a string, got " + describe(v)})
		}
	case protoreflect.EnumKind:
		checkEnum(path, v, fd.Enum(), errs)
	}
	// Other kinds do not occur in the security API; protojson judges them.
}

func checkEnum(path string, v any, ed protoreflect.EnumDescriptor, errs *[]fieldError) {
	switch v := v.(type) {
	case string:
		if ed.Values().ByName(protoreflect.Name(v)) != nil {
			return
		}
	case json.Number:
		if f, err := v.Float64(); err == nil && f == math.Trunc(f) && f >= math.MinInt32 && f <= math.MaxInt32 {
			return
		}
	}
	var names []string
	for i := range ed.Values().Len() {
		names = append(names, string(ed.Values().Get(i).Name()))
	}
	got := describe(v)
	if s, ok := v.(string); ok {
		got = strconv.Quote(s)
	}
	*errs = append(*errs, fieldError{path, fmt.Sprintf("%s is not one of %s", got, strings.Join(names, ", "))})
}

// suggest returns the JSON name of a field that key probably meant: one
// that differs, ignoring case and underscores, by at most one letter added,
// removed or replaced.
func suggest(key string, fields protoreflect.FieldDescriptors) string {
	k := strings.ToLower(strings.ReplaceAll(key, "_", ""))
	for i := range fields.Len() {
		name := fields.Get(i).JSONName()
		if oneEdit(strings.ToLower(name), k) {
			return name
		}
	}
	return ""
}

// oneEdit reports whether a and b differ by at most one inserted, deleted
// or replaced byte.
func oneEdit(a, b string) bool {
	if len(a) < len(b) {
		a, b = b, a
	}
	if len(a)-len(b) > 1 {
		return false
	}
	i := 0
	for i < len(b) && a[i] == b[i] {
		i++
	}
	if len(a) == len(b) {
		return i == len(a) || a[i+1:] == b[i+1:]
	}
	return a[i+1:] == b[i:]
}

// protoMessage strips protojson's "(line 1:31)" position, which refers to
// an internal one-line JSON rather than to the user's YAML.
var protoPosition = regexp.MustCompile(`\s*\(line \d+:\d+\)`)

func protoMessage(err error) string {
	return strings.TrimPrefix(protoPosition.ReplaceAllString(err.Error(), ""), "proto: ")
}
