//! XEP-0004 data forms as the modules use them: MUC's room configuration, room information
//! and registration forms (XEP-0045 §15.5), PubSub's node configuration, subscription
//! options and publish-options (XEP-0060 §16.4).
//!
//! A small reader and writer over `Element`, since the forms are a few fields each and the
//! rest of the server works on `rookery_xml::Element`. Not a module: a helper modules share.

use rookery_xml::Element;

pub const NS_DATA: &str = "jabber:x:data";

/// A form being built.
pub struct FormBuilder {
    form: Element,
}

impl FormBuilder {
    /// A form of `kind` (`form`, `result`, `submit`) with its `FORM_TYPE`.
    pub fn new(kind: &str, form_type: &str) -> Self {
        let form = Element::new("x", NS_DATA)
            .with_attr("type", kind)
            .with_child(
                Element::new("field", NS_DATA)
                    .with_attr("var", "FORM_TYPE")
                    .with_attr("type", "hidden")
                    .with_child(Element::new("value", NS_DATA).with_text(form_type)),
            );
        FormBuilder { form }
    }

    pub fn title(mut self, title: &str) -> Self {
        self.form
            .push_child(Element::new("title", NS_DATA).with_text(title));
        self
    }

    /// The form's `<instructions/>` (XEP-0004 §3.1).
    pub fn instructions(mut self, text: &str) -> Self {
        self.form
            .push_child(Element::new("instructions", NS_DATA).with_text(text));
        self
    }

    /// A field with its values; `kind` is the XEP-0004 field type (or `None` in a result).
    pub fn field(
        mut self,
        var: &str,
        kind: Option<&str>,
        label: Option<&str>,
        values: &[&str],
    ) -> Self {
        let mut f = Element::new("field", NS_DATA).with_attr("var", var);
        if let Some(kind) = kind {
            f.set_attr("type", kind);
        }
        if let Some(label) = label {
            f.set_attr("label", label);
        }
        for v in values {
            f.push_child(Element::new("value", NS_DATA).with_text(*v));
        }
        self.form.push_child(f);
        self
    }

    /// A list-single field with its options (value, label).
    pub fn list(mut self, var: &str, label: &str, value: &str, options: &[(&str, &str)]) -> Self {
        let mut f = Element::new("field", NS_DATA)
            .with_attr("var", var)
            .with_attr("type", "list-single")
            .with_attr("label", label)
            .with_child(Element::new("value", NS_DATA).with_text(value));
        for (v, l) in options {
            f.push_child(
                Element::new("option", NS_DATA)
                    .with_attr("label", *l)
                    .with_child(Element::new("value", NS_DATA).with_text(*v)),
            );
        }
        self.form.push_child(f);
        self
    }

    pub fn boolean(self, var: &str, label: &str, value: bool) -> Self {
        self.field(
            var,
            Some("boolean"),
            Some(label),
            &[if value { "1" } else { "0" }],
        )
    }

    pub fn build(self) -> Element {
        self.form
    }
}

/// A submitted form, read.
pub struct Submitted<'a> {
    form: &'a Element,
}

impl<'a> Submitted<'a> {
    /// The `<x xmlns='jabber:x:data'/>` child of `parent`, if there is one.
    pub fn find(parent: &'a Element) -> Option<Submitted<'a>> {
        parent
            .get_child("x", NS_DATA)
            .map(|form| Submitted { form })
    }

    /// `form` itself, an `<x xmlns='jabber:x:data'/>`.
    pub fn of(form: &'a Element) -> Submitted<'a> {
        Submitted { form }
    }

    /// `submit`, `cancel`, `form` or `result`.
    pub fn kind(&self) -> &str {
        self.form.attr("type").unwrap_or("")
    }

    pub fn form_type(&self) -> Option<String> {
        self.value("FORM_TYPE")
    }

    /// Every value of a field, in order; `None` when the field is absent.
    pub fn values(&self, var: &str) -> Option<Vec<String>> {
        self.form
            .children()
            .find(|f| f.name() == "field" && f.attr("var") == Some(var))
            .map(|f| {
                f.children()
                    .filter(|v| v.name() == "value")
                    .map(Element::text)
                    .collect()
            })
    }

    /// Every field's `var` in document order (fields without one are skipped).
    pub fn vars(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.form
            .children()
            .filter(|f| f.name() == "field")
            .filter_map(|f| f.attr("var"))
    }

    /// The form element itself.
    pub fn element(&self) -> &'a Element {
        self.form
    }

    /// The first value of a field (an empty string for a field without value).
    pub fn value(&self, var: &str) -> Option<String> {
        self.values(var)
            .map(|v| v.into_iter().next().unwrap_or_default())
    }

    /// A boolean field (XEP-0004 §3.3: `1`/`true` and `0`/`false`); `Err` names a bad value.
    pub fn boolean(&self, var: &str) -> Result<Option<bool>, String> {
        match self.value(var).as_deref() {
            None => Ok(None),
            Some("1" | "true") => Ok(Some(true)),
            Some("0" | "false" | "") => Ok(Some(false)),
            Some(other) => Err(format!("{var}: '{other}' is not a boolean")),
        }
    }
}
