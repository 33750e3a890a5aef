//! The console's two message catalogs (English and Simplified Chinese) and
//! the choice between them.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, header};

use super::LANG_COOKIE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    ZhCn,
}

impl Lang {
    pub fn code(self) -> &'static str {
        match self {
            Self::En => "en",
            Self::ZhCn => "zh-CN",
        }
    }

    pub fn other(self) -> Self {
        match self {
            Self::En => Self::ZhCn,
            Self::ZhCn => Self::En,
        }
    }

    /// `en`, `zh-CN` and their common spellings (`en-US`, `zh`, `zh-Hans`).
    pub fn parse(tag: &str) -> Option<Self> {
        let tag = tag.trim().to_ascii_lowercase();
        let primary = tag.split(['-', '_']).next().unwrap_or_default();
        match primary {
            "en" => Some(Self::En),
            "zh" => Some(Self::ZhCn),
            _ => None,
        }
    }

    /// The cookie's choice, else the first supported language of
    /// `Accept-Language` by preference, else English.
    pub fn of_request(headers: &HeaderMap) -> Self {
        Self::from_cookie(headers)
            .or_else(|| Self::from_accept_language(headers))
            .unwrap_or(Self::En)
    }

    fn from_cookie(headers: &HeaderMap) -> Option<Self> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.split_once('='))
            .find(|(name, _)| name.trim() == LANG_COOKIE)
            .and_then(|(_, value)| Self::parse(value))
    }

    fn from_accept_language(headers: &HeaderMap) -> Option<Self> {
        let value = headers.get(header::ACCEPT_LANGUAGE)?.to_str().ok()?;
        let mut ranked: Vec<(f32, usize, Self)> = value
            .split(',')
            .enumerate()
            .filter_map(|(i, item)| {
                let mut parts = item.split(';');
                let lang = Self::parse(parts.next()?)?;
                let q = parts
                    .filter_map(|p| p.trim().strip_prefix("q="))
                    .find_map(|q| q.trim().parse::<f32>().ok())
                    .unwrap_or(1.0);
                (q > 0.0).then_some((q, i, lang))
            })
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        ranked.first().map(|(_, _, lang)| *lang)
    }
}

pub type Catalog = BTreeMap<String, String>;

/// Both catalogs, parsed once, with their JSON for the scripts.
pub struct Catalogs {
    en: Catalog,
    zh: Catalog,
    en_json: String,
    zh_json: String,
}

impl Catalogs {
    pub fn load() -> anyhow::Result<Self> {
        let en: Catalog = serde_json::from_str(include_str!("i18n/en.json"))
            .map_err(|e| anyhow::anyhow!("console catalog en: {e}"))?;
        let zh: Catalog = serde_json::from_str(include_str!("i18n/zh-CN.json"))
            .map_err(|e| anyhow::anyhow!("console catalog zh-CN: {e}"))?;
        Ok(Self {
            en_json: script_safe_json(&en)?,
            zh_json: script_safe_json(&zh)?,
            en,
            zh,
        })
    }

    pub fn get(&self, lang: Lang) -> &Catalog {
        match lang {
            Lang::En => &self.en,
            Lang::ZhCn => &self.zh,
        }
    }

    /// The catalog as JSON that is safe inside a `<script type="application/json">`.
    pub fn json(&self, lang: Lang) -> &str {
        match lang {
            Lang::En => &self.en_json,
            Lang::ZhCn => &self.zh_json,
        }
    }
}

fn script_safe_json(catalog: &Catalog) -> anyhow::Result<String> {
    Ok(serde_json::to_string(catalog)?
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026"))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn both_catalogs_have_the_same_keys_and_no_empty_message() {
        let c = Catalogs::load().unwrap();
        let en: Vec<_> = c.en.keys().collect();
        let zh: Vec<_> = c.zh.keys().collect();
        let missing_zh: Vec<_> = en.iter().filter(|k| !c.zh.contains_key(**k)).collect();
        let missing_en: Vec<_> = zh.iter().filter(|k| !c.en.contains_key(**k)).collect();
        assert!(missing_zh.is_empty(), "missing in zh-CN: {missing_zh:?}");
        assert!(missing_en.is_empty(), "missing in en: {missing_en:?}");
        for (k, v) in c.en.iter().chain(c.zh.iter()) {
            assert!(!v.trim().is_empty(), "{k} is empty");
        }
        assert!(!c.json(Lang::En).contains('<'));
    }

    #[test]
    fn the_cookie_wins_then_accept_language_then_english() {
        assert_eq!(Lang::of_request(&HeaderMap::new()), Lang::En);
        let h = headers(&[(header::ACCEPT_LANGUAGE, "zh-CN,zh;q=0.9,en;q=0.8")]);
        assert_eq!(Lang::of_request(&h), Lang::ZhCn);
        let h = headers(&[(header::ACCEPT_LANGUAGE, "fr-FR, en;q=0.5, zh;q=0.7")]);
        assert_eq!(Lang::of_request(&h), Lang::ZhCn);
        let h = headers(&[(header::ACCEPT_LANGUAGE, "de, zh;q=0")]);
        assert_eq!(Lang::of_request(&h), Lang::En);
        let h = headers(&[
            (header::ACCEPT_LANGUAGE, "zh-CN"),
            (header::COOKIE, "a=b; wf_lang=en"),
        ]);
        assert_eq!(Lang::of_request(&h), Lang::En);
        let h = headers(&[(header::COOKIE, "wf_lang=zh-CN")]);
        assert_eq!(Lang::of_request(&h), Lang::ZhCn);
        let h = headers(&[(header::COOKIE, "wf_lang=xx")]);
        assert_eq!(Lang::of_request(&h), Lang::En);
    }
}
