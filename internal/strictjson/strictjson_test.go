package strictjson

import "testing"

func TestDecode(t *testing.T) {
	var v struct {
		A int `json:"a"`
	}
	if err := Decode([]byte(`{"a":1}`), &v); err != nil || v.A != 1 {
		t.Fatalf("%+v %v", v, err)
	}
	err := Decode([]byte(`{"a":1,"colour":"red"}`), &v)
	if f, ok := UnknownField(err); !ok || f != "colour" {
		t.Fatalf("unknown field: %q %v (%v)", f, ok, err)
	}
	if err := Decode([]byte(`{"a":1} {}`), &v); err == nil {
		t.Fatal("trailing data accepted")
	}
	if _, ok := UnknownField(Decode([]byte(`{"a":"x"}`), &v)); ok {
		t.Fatal("a type error read as an unknown field")
	}
}
